"""gpuscope alert and recording rules as code, and the Alertmanager routing that delivers them."""
