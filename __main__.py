"""Entry point the Pulumi language host runs for this project (see Pulumi.yaml)."""

from stacks.program import main

main()
