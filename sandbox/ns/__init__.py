"""One module per namespace: mount (the setup plan), user (the user namespace), net (the network
namespace)."""
