"""The web server: ``manage.py serve`` runs the ASGI application under Daphne, with
request bodies bounded as they arrive and streamed responses waiting for slow clients.

:mod:`.body_policy` decides a request body's cap from its head, :mod:`.bounded_requests`
holds Daphne to it, :mod:`.body_limit` holds any other ASGI server to it, and
:mod:`.flow_control` makes a streamed response wait for the client to drain the last
chunk. The ``serve`` command is why this is an app.
"""
