"""`sms-receiver` with apicontrol's "delivered" read as `sent` ("remap") or as shipped
("as-is"): the normaliser change bench-reprocess corrects history for."""

from __future__ import annotations

import sys

from normalizers import apicontrol
from normalizers.events import Status
from receiver.cli import main

if __name__ == "__main__":
    if sys.argv[1] == "remap":
        apicontrol.STATUS_MAP = {**apicontrol.STATUS_MAP, "delivered": Status.SENT}
    sys.exit(main(sys.argv[2:]))
