output "node_toml" {
  description = "The node's /etc/switchyard/node.toml."
  value       = local.node_toml
}

output "cloud_init" {
  description = "The #cloud-config user data (holds the node's private key)."
  value       = local.cloud_init
  sensitive   = true
}
