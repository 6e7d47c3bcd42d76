"""A handler whose module fails to load: its runtime posts an init error."""
raise RuntimeError("cannot load the model")


def handler(event, context):
    return event
