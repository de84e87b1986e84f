"""The queue server: bluesky-queueserver's RE Manager and bluesky-httpserver for a profile.

``hutch queue up`` starts Redis, the RE Manager (with a startup generated from the profile, so
a queued plan runs as under ``hutch run``) and the HTTP server (API keys per user group);
``hutch queue add|load|start|pause|stop|status|history`` drive it. See docs/queue.md.

The modules are imported where used (``hutch.queue.services``, ``.samples``...): the
``hutch`` command line only loads them for the ``queue`` command.
"""
