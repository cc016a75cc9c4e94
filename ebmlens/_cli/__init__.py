"""One module per ``ebmlens`` subcommand; each registers itself on :data:`ebmlens.cli.main`."""
