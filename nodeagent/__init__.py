"""Node agent: watches its own and every peer cell, merges global services, programs the maps.

Built in the node-agent issue; only the console-script entry point exists until then.
"""
