"""A compute driver layer on imagebackend: instance disks, flows, CLI."""
