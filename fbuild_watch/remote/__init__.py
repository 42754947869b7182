"""Boards on other machines reached through a broker that owns them.

`labgrid` (optional extra): `labgrid://PLACE` ports, a place held through the
labgrid coordinator for the whole session. Brokers are imported lazily: a
session without such a port never loads them.
"""
