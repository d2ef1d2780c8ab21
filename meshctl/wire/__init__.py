"""Wire models: the request and response bodies of the REST API.

Shared by the server (`meshctl.api`, `meshctl.service`) and its clients (`meshctl.client`,
the CLI, the lab, the agent). Imports only `meshctl.core`. Field names are a public contract.
"""
