from typing import Union

def apply_mask(
    data: Union[bytes, bytearray, memoryview], mask: Union[bytes, bytearray, memoryview]
) -> bytes: ...
