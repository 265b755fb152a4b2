"""Approver channels: Slack, Microsoft Teams and webhooks behind one small interface (`base.Channel`)."""
