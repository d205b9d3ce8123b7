"""The `dpop` command line, the top layer: it parses options, opens the workspace and calls the stages
(`pipeline`, `dpop`) and the chain (`flows`). Nothing below it imports it. `cli.main.app` is the typer app."""
