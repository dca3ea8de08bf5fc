"""First-party encoder families of smp3d.

Each module is registered through the ``smp3d.encoders`` entry-point group in this
distribution's pyproject.toml, the same door a third-party package uses; nothing here is
imported by ``smp3d`` directly.
"""
