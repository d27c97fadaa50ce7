"""recsvc: the recommendation service. Loads model bundles and serves them over HTTP.

The app factory is ``recsvc.app.create_app``; this package imports nothing, so the trainer can
import the bundle format, identity and policy without Flask or redis."""
