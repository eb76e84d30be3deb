"""The HTTP face: the app factory and its resources, middlewares, authentication, request
bodies, the OpenAPI document and the routes, one module per audience."""
