"""Users: provisioned on their first write, from the identity provider's id and email."""
