"""The item catalogue as every role sees it: the `items` topic followed and each title embedded once.

Shared by the roles: imports ops, kafka and the contracts only; never a role.
"""
