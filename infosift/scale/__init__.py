"""Optional engines that run infosift's steps on a Ray cluster (``pip install -e ".[ray]"``); nothing here is
imported by the default pipeline, and each module imports ray only when it is used."""
