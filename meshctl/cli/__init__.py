"""`meshctl`: a thin client of the controller's REST API (and `meshctl serve`)."""
