"""`python -m receiver`, the same as the `sms-receiver` command."""

import sys

from receiver.cli import main

sys.exit(main())
