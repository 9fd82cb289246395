"""What runs at the city, never on a bench: `bench-ops` (`opsctl`: signing keys,
signed commands) and `bench-ops bridge` (`bridge`: contract v2 batches republished
as the v1 JSON the city's consumers read).

The bench never imports anything here (tests/test_code_shape.py keeps it so), and
never installs the `ops` extra that the city's tools' own dependencies go in. Code
here may use the rest of the package (the contract, the command format, signing).
"""
