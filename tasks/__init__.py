"""tinyveo pipeline steps: one module per step, each a plain typed function, a thin Prefect task,
and a `python -m tasks.<step>` entry for DVC. Tasks may import model/, never flows/."""
