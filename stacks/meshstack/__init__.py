"""meshctl's Pulumi program: one ComponentResource per cloud over one cloud-neutral model."""
