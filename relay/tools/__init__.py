"""What an agent does beyond talking: the tenant's own tools (a signed HTTPS call each) and
transfers to a person, cold or warm."""
