"""The composition roots: what starts which process, above every layer it wires.

`commands.cli` (the `tally` command), `commands.runtime` (`tally up`, `tally worker`, `tally api`:
one process wiring the broker, the store, the worker and the API), `commands.ops` (the operations
commands) and `commands.bench` (`tally bench`). Nothing below imports them: the core `tally`
imports neither `api` nor `streams`, and both import the core.
"""
