"""Generated model code. Do not edit: run `make generate`."""
