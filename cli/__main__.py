"""`python -m cli`: the `dpop` command (as `accelerate launch -m cli train …` needs a module)."""

from cli.main import app

app()
