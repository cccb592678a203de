"""The emitter SDK that agent runtimes import."""
