from django.urls import path

from apps.web import dlq_views, log_views, secret_views, views

app_name = "web"

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/live/", views.dashboard_live, name="dashboard-live"),
    path("deploy/", views.deploy, name="deploy"),
    path("deployments/<int:deployment_id>/", views.rollout, name="rollout"),
    path("deployments/<int:deployment_id>/live/", views.rollout_live, name="rollout-live"),
    path("services/<str:name>/", views.service_detail, name="service"),
    path("services/<str:name>/diff/", views.service_diff, name="diff"),
    path("services/<str:name>/rollback/", views.service_rollback, name="rollback"),
    path("services/<str:name>/scale/", views.service_scale, name="scale"),
    path("services/<str:name>/autoscale/", views.service_autoscale, name="autoscale"),
    path("services/<str:name>/autoscale/set/", views.service_autoscale_set, name="autoscale-set"),
    path("services/<str:name>/logs/", log_views.service_logs, name="service-logs"),
    path("services/<str:name>/dead-letters/", dlq_views.dead_letters, name="dead-letters"),
    path(
        "services/<str:name>/dead-letters/replay/",
        dlq_views.dead_letters_replay,
        name="dead-letters-replay",
    ),
    path(
        "services/<str:name>/dead-letters/<str:dead_letter_id>/",
        dlq_views.dead_letter,
        name="dead-letter",
    ),
    path("workers/<str:name>/logs/", log_views.worker_logs, name="worker-logs"),
    path("requests/", views.request_lookup, name="request"),
    path("tokens/", views.tokens, name="tokens"),
    path("secrets/", secret_views.secrets, name="secrets"),
    path("secrets/<str:name>/delete/", secret_views.secret_delete, name="secret-delete"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
