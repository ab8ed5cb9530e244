"""Small runnable examples, shipped so that ``geventws serve geventws.examples.echo:handle``
works right after installing. The documentation includes them."""
