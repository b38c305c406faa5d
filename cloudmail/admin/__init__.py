"""Running the server: the service layer, the JSON admin API and the `cloudmail-admin` command."""
