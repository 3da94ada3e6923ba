"""Simulated providers (`serve --sandbox`, the default of `make run`): each accepts its real send
API under /sandbox/<provider>, answers as its documentation says, then calls the hub back in that
provider's real callback formats. What happens to a recipient is chosen by the number's last
digit (see `common.BY_LAST_DIGIT` and the README)."""

from __future__ import annotations

from aiohttp import web

from receiver.sandbox import apicontrol, carrierx, properties, swift, telecom23
from receiver.sandbox.common import SANDBOX_KEY, Sandbox


def sandbox_app(sandbox: Sandbox) -> web.Application:
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    for module in (apicontrol, telecom23, properties, swift, carrierx):
        module.add_routes(app)

    async def stop_reports(app: web.Application) -> None:
        await sandbox.close()

    app.on_cleanup.append(stop_reports)
    return app
