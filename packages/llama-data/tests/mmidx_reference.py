"""An independent MMIDIDX writer, built from the byte table alone (struct, no numpy, no llama_data)."""

from __future__ import annotations

import struct

# dtype code -> struct format character, as the byte table defines them.
STRUCT_FORMATS = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 6: "d", 7: "f", 8: "H", 9: "I", 10: "Q"}


def write_reference(prefix, code, sequences, doc_idx):
    """Write PREFIX.bin/.idx holding ``sequences`` (lists of numbers) with the given ``doc_idx``."""
    fmt = STRUCT_FORMATS[code]
    itemsize = struct.calcsize("<" + fmt)
    sizes = [len(s) for s in sequences]
    pointers, offset = [], 0
    for n in sizes:
        pointers.append(offset)
        offset += n * itemsize
    with open(f"{prefix}.bin", "wb") as f:
        for seq in sequences:
            f.write(struct.pack(f"<{len(seq)}{fmt}", *seq))
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(sequences)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(struct.pack(f"<{len(sizes)}i", *sizes))
        f.write(struct.pack(f"<{len(pointers)}q", *pointers))
        f.write(struct.pack(f"<{len(doc_idx)}q", *doc_idx))
