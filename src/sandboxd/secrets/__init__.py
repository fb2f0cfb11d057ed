"""Secret stores: names and limits (``rules``), encryption at rest (``cipher``).

The control plane keeps each organization's secret values in its database, encrypted with a
key that lives only in its data directory; sandboxes refer to them by store and name, and
receive the values as environment variables when they start.
"""
