"""The bundled sandbox: one HTTP server playing the product service and the gateway catalogue."""
