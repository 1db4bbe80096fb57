"""ragkit as a server: ``ragkit mcp`` (Model Context Protocol), ``ragkit serve`` (HTTP API, page).

Both hold one index open for their life (``backend.Backend``) and return the JSON shapes of
``ragkit.shapes``, the same as the CLI's ``--json``. Their dependencies are the ``serve`` extra.
"""
