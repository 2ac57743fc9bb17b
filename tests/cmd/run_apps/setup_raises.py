"""An `ame run` bad-input case: an exception during setup."""
from twisted.internet import reactor


def configure():
    raise ValueError("bad configuration value 42")


configure()
reactor.run()
