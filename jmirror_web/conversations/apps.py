from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "jmirror_web.conversations"
    verbose_name = "Conversations and names"
