"""Operator commands behind `python -m coordinator`: token minting and a development CA."""
