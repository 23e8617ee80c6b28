"""tinyveo pipeline steps: one module per step, each a plain typed function run by `tinyveo <step>`
(tasks/cli.py) and a DVC stage; storage modules (cache, checkpoint, samples) own the formats, worlds/
and score/ the built-in worlds and their scorer. Tasks may import model/, never flows/."""
