"""The library and each broker's raw client behind one small interface
(:class:`~benchmarks.drivers.base.Driver`). Raw-client modules import their client
library, so they are imported only when their broker is measured."""
