"""Pure protocol state machines: no I/O, no clocks, no threads.

Time and randomness come in as arguments; every decision comes out as data
(records to write, notifications to deliver).  A test fails if anything in
this package imports a module that touches the world."""
