"""Entry point the Pulumi language host runs for the install program (deploy/)."""

from install_program import main

main()
