"""The ``hark`` command: argument parsing, logging set-up and the client commands.

The entry point is ``media.app.main``, which hands ``hark serve`` the composition root."""
