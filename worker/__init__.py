"""flopex worker: the provider daemon that runs verified jobs on its devices."""
