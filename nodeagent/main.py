"""``nodeagent`` console script. The agent itself arrives with the node-agent issue."""

import sys


def main() -> None:
    sys.stderr.write("nodeagent: not built yet (see the node-agent issue); nothing was started\n")
    sys.exit(2)
