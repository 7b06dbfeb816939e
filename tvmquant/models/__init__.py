"""Built-in models shipped with tvmquant."""
