# Shortcuts; the scripts are the source of truth (they bootstrap the environment).
.PHONY: main test env help
help:
	@echo "make main   # the main job on the built-in dataset (scripts/main.sh)"
	@echo "make test   # the test suite (scripts/test.sh)"
	@echo "make env    # create/update the environment only"
main:
	./scripts/main.sh
test:
	./scripts/test.sh
env:
	./scripts/env.sh true
