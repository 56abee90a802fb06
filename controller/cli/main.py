"""``edgefleet``: the operator's command line, one module per command group.

Commands are thin: they read options, call a function, print, and exit with its code.
"""

from __future__ import annotations

import sys

import typer

from . import imports as _imports  # noqa: F401 - adds ``model import`` to model_app
from .alerts import alert_app
from .artifacts import artifacts_app
from .audit import audit_app
from .ca import ca_app
from .channels import channel_app
from .devices import devices_app
from .doc import doc_app
from .keys import keys_app
from .models import model_app
from .releases import release_app
from .rollouts import rollout_app
from .samples import samples_app
from .serve import controller_app
from .simulator import simulator_app
from .tokens import tokens_app

__all__ = ["app", "main"]

app = typer.Typer(help="edgefleet: ship ML models to edge fleets safely.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(ca_app, name="ca")
app.add_typer(doc_app, name="doc")
app.add_typer(controller_app, name="controller")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(model_app, name="model")
app.add_typer(release_app, name="release")
app.add_typer(devices_app, name="devices")
app.add_typer(rollout_app, name="rollout")
app.add_typer(channel_app, name="channel")
app.add_typer(alert_app, name="alert")
app.add_typer(samples_app, name="samples")
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(simulator_app)


def main() -> None:
    sys.exit(app())
