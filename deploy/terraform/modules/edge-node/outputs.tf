output "instance_id" {
  description = "The EC2 instance id."
  value       = aws_instance.node.id
}

output "security_group_id" {
  description = "The node's security group."
  value       = aws_security_group.node.id
}

output "private_ip" {
  description = "The instance's private address."
  value       = aws_instance.node.private_ip
}
