"""`python -m probes`: the same as `meshctl-agent`."""

import sys

from probes.cli import main

sys.exit(main())
